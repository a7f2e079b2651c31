"""Start a local Triton server (CPU) for the model repository: see ``--help``.

python serving/serve.py [--repository serving/model_repository] [--http-port 8000]
                        [--grpc-port 8001] [--metrics-port 8002]
"""

import sys

from wsss.serving.cli import main

if __name__ == "__main__":
    sys.exit(main())
