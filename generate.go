// Package netshape is the root of dokku-netshape. This file only drives code
// generation: the BPF object and its Go bindings are committed, so building
// needs no clang. Run `make generate` after changing bpf/.
package netshape

//go:generate go tool bpf2go -tags linux -output-dir pkg/shaper -go-package shaper -output-stem edt -target bpfel -type budget_cfg -type budget_state -type budget_stats -type flow_key -type police_cfg -type police_state -type police_stats -cflags "-O2 -g -Wall -Werror -mcpu=v3 -I/usr/include/x86_64-linux-gnu" edt bpf/edt.c
