// Package cni checks, in a VM guest, that the pod bandwidth annotations
// pkg/k3s writes for an app on Dokku's k3s scheduler are enforced at the
// configured rate by the CNI bandwidth plugin that k3s chains, invoked the
// way the container runtime invokes it. The plugin is built from
// github.com/containernetworking/plugins by `make vm-tools` (never
// committed) and found through NETSHAPE_CNI_BANDWIDTH.
package cni
