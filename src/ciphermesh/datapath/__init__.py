"""Everything that touches one node's kernel; the agent and the lab use its face (`face`, `desired`) only."""
