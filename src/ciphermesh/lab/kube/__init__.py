"""The lab on Kubernetes: its control plane, the apiserver relay into the nodes, the lab kubelet's start."""
