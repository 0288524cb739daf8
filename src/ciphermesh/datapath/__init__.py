"""Everything that touches one node's kernel: links, routes, TUN, sockets and the engines."""
