"""twistd plugin: ``twistd -n mtqpgw --config PATH``."""

from twisted.application.service import ServiceMaker

mtqpgw = ServiceMaker(
    "mtqpgw",
    "mtqpgw.tap",
    "Message Tracking Query Protocol (RFC 3887) server and chaining gateway",
    "mtqpgw",
)
