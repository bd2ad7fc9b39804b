"""The outbound path: terminal requests journaled, forwarded to the gateway's business API, settled exactly once."""
