from tfkit.cli import main

raise SystemExit(main())
