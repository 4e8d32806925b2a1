"""`python -m pipeline.doctor`: kept at this path; the code is in pipeline.commands.doctor."""
import sys

from pipeline.commands.doctor import main

if __name__ == "__main__":
    sys.exit(main())
