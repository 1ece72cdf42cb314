"""Offline stand-in for the ``get-pip.py`` bootstrap script of ``ansible-test --venv``.

ansible-test creates its virtual environments without pip, then runs a ``get-pip.py``
it downloads from a host CI cannot reach, cached as ``~/.ansible/test/cache/get_pip_<ver>.py``.
``make sanity`` puts this file there instead (see the Makefile). It does the same job:
install the bundled pip with ``ensurepip``, then ``pip install`` the packages ansible-test
asked for (e.g. ``pip==25.2``) from the package index.

flashcat.flashduty stand-in (the Makefile replaces only files carrying this marker).
"""

import subprocess
import sys

# Options only get-pip.py understands; pip itself would reject them.
GET_PIP_OPTIONS = ("--no-setuptools", "--no-wheel")


def main():
    # In a child process: ensurepip.bootstrap() would set PIP_CONFIG_FILE=/dev/null in this
    # process's environment, and the install below would then ignore the machine's pip
    # configuration (certificates, indexes).
    subprocess.check_call([sys.executable, "-m", "ensurepip", "--upgrade"])
    args = [arg for arg in sys.argv[1:] if arg not in GET_PIP_OPTIONS]
    subprocess.check_call([sys.executable, "-m", "pip", "install", "--quiet", *args])


if __name__ == "__main__":
    main()
