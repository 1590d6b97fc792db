from loomdb.cli.main import main

raise SystemExit(main())
