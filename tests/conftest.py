import sys
from pathlib import Path

# Tests import their helpers (hf_reference, s3 fixtures) by module name.
sys.path.insert(0, str(Path(__file__).parent))
