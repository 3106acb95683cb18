//! SASL mechanisms (server side), no I/O.
