from hwbp.server.main import main

raise SystemExit(main())
