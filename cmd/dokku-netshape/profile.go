//go:build !pprof

package main

// startProfile profiles nothing: only a binary built with -tags pprof does (profile_pprof.go).
func startProfile() func() { return func() {} }
