import sys

from tasks.supervisor.main import main

sys.exit(main())
