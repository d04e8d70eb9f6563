from hwbp.gdbserver.main import main

raise SystemExit(main())
