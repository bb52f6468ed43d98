"""Known external TFRecord schemas, as :class:`~tfkit.records.reader.FeatureMapping` values.

Example:
    >>> SIIM_ISIC_2020.id
    'image_name'
"""

from __future__ import annotations

from tfkit.records.reader import FeatureMapping

#: The widely used public SIIM-ISIC 2020 melanoma TFRecords (Kaggle: Chris Deotte's
#: ``melanoma-{256..1024}x...`` sets): image bytes, image_name bytes, target int64 (absent in
#: test files), patient_id / sex / anatom_site_general_challenge / diagnosis int64 label
#: encodings, age_approx int64, width/height int64. File names ``train00-2182.tfrec`` give the
#: file index as the "fold".
SIIM_ISIC_2020 = FeatureMapping(
    image="image",
    id="image_name",
    label="target",
    group="patient_id",
    fold=None,
    id_dtype="string",
    group_dtype="int64",
    meta={
        "sex": ("sex", "categorical"),
        "age_approx": ("age_approx", "numeric_int64"),
        "anatom_site_general_challenge": ("anatom_site_general_challenge", "categorical"),
    },
)
