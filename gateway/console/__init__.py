"""The finance console: a server-rendered web page under ``/console/`` on the gateway's listener, where
finance staff see the day's reconciliation, work its exceptions and export them. Nothing here is needed by
the business API; the console only reads the store and acts through the refund saga."""
