package main

//go:generate go tool bpf2go -cc clang-14 -cflags "-O2 -g -mcpu=v3 -Wall -Werror -I/usr/include/x86_64-linux-gnu -I../../bpf" -target bpfel alternatives alternatives.c
