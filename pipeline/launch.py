"""`python -m pipeline.launch`: kept at this path; the code is in pipeline.commands.launch."""
import sys

from pipeline.commands.launch import main

if __name__ == "__main__":
    sys.exit(main())
