//go:build tools

// Package tools pins wireguard-go: this module's go.mod and go.sum are the pin.
package tools

import (
	_ "golang.zx2c4.com/wireguard"
)
