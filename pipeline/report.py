"""`python -m pipeline.report`: kept at this path; the code is in pipeline.commands.report."""
from pipeline.commands.report import main

if __name__ == "__main__":
    main()
