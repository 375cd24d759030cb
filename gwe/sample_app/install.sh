#!/bin/sh
# Nothing to install beyond the unpacked files: the program runs from this directory.
echo "installing $GWE_APP_NAME $GWE_APP_VERSION into $GWE_APP_DIR"
