from load.main import main

raise SystemExit(main())
