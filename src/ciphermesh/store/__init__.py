"""The cluster's shared state (nodes with their pod CIDRs, the key secret, operators) behind one contract."""
