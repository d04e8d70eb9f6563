from hwbp.agent.main import main

raise SystemExit(main())
