//go:build tools

// Package tools pins etcd's server command: this module's go.mod and go.sum are the pin.
package tools

import (
	_ "go.etcd.io/etcd/server/v3"
)
