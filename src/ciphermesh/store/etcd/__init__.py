"""The store on etcd (Cilium's kvstore mode, and the multi-host mode without Kubernetes)."""
