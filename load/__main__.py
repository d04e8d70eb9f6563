from hwbp.load.main import main

raise SystemExit(main())
