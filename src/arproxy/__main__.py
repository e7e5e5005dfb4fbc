from arproxy.cli import main

raise SystemExit(main())
