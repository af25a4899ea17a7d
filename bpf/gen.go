package bpf

//go:generate go tool bpf2go -cc clang-14 -cflags "-O2 -g -mcpu=v3 -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target bpfel -type grm_group -type grm_slot -type grm_socket_ref -type grm_flow_key -type grm_flow -type grm_counters reuseport reuseport.c -- -I.
