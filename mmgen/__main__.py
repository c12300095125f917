import sys

from mmgen.cli import main

sys.exit(main())
