"""The per-node agent: registers, watches, plans and applies the datapath."""
