"""The intranet listener: kiosks and cashier windows on the hospital LAN, authenticated per terminal."""
