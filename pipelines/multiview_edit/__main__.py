from pipelines.multiview_edit.cli import main

raise SystemExit(main())
