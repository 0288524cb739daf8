"""The lab's stand-in kubelet: runs ciphermesh's own DaemonSets and Deployments on the lab's nodes, from
the objects in the API, as processes in the node namespaces. It plays the kubelet (and the DaemonSet and
Deployment controllers) for ciphermesh's workloads only; there are no images and no `kubectl exec`."""
