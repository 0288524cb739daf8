"""The store on Kubernetes: CiliumNodes, the key Secret and Leases through a real kube-apiserver."""
