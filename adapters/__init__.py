"""HIS adapters (SOAP now; HL7 v2 and stored procedures later) and the mapping engine they share."""
