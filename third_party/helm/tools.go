//go:build tools

// Package tools pins helm's command: this module's go.mod and go.sum are the pin.
package tools

import (
	_ "helm.sh/helm/v3/cmd/helm"
)
