"""A hospital's day with everything going wrong: ``his-sandbox day``.

The sandbox HIS, the sandbox channels, the bridge agent and the gateway run as separate processes on loopback,
sharing one simulated clock (``bridge.clock``); a seeded plan (``plan``) replays a day of registrations,
outpatient charges, inpatient deposits, kiosk barcode payments, insurance partial refunds, full refunds and
cancellations while faults (``faults``) are injected on a schedule. Then the day is reconciled, finance works the
exceptions through the console, the books of the three ledgers are read back (``books``) and checked
(``checks``), and a report ends with one JSON line (``report``). ``run`` is the orchestration.

Like the rest of the sandbox it imports nothing of ours but the protocol helpers (``bridge.protocol``,
``bridge.clock``): it drives the other processes through their command lines, APIs and web pages, as their users
do.
"""
