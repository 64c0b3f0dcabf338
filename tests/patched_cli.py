"""Run the real cnnpipe CLI with torchvision's MNIST file list replaced (argv[1]: a JSON list).

The official MNIST training files cannot be reached from the test machines; the tests
generate them, and this points torchvision's ``MNIST.resources`` (the names and md5s
cnnpipe's catalog reads) at the generated ones. Everything else runs as shipped.
"""

import json
import sys

import torchvision.datasets

torchvision.datasets.MNIST.resources = [tuple(r) for r in json.loads(sys.argv.pop(1))]

from cnnpipe.cli.app import main  # noqa: E402

sys.argv[0] = "cnnpipe"
main()
