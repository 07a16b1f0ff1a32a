import sys

from tasks.worker.main import main

sys.exit(main())
