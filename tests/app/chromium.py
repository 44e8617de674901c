"""Debian's Chromium as the browser tests and docs/screenshots.py start it: headless, as root, on a
closed network (without the background-networking flags Chromium's connections are refused by the
dozen), never a browser download."""

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-quic", "--no-first-run"]
