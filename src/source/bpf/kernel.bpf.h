// SPDX-License-Identifier: GPL-2.0
//
// The kernel's structures the exporter's programs read, each declared once,
// for every program, with only the fields some program reads. CO-RE
// relocates each access against the running kernel's BTF at load, so the
// order of the fields and the ones left out do not matter, and a field a
// program does not read costs it nothing. A `___flavour` suffix names an
// older layout of the same structure, which libbpf matches by the name
// before the suffix (`bpf_core_field_exists` picks the one the kernel has).
//
// The records the programs write are in `records.bpf.h`.

#ifndef KERNEL_BPF_H
#define KERNEL_BPF_H

#include <linux/types.h>

struct seq_file;
struct bpf_map;
struct sock;
struct net;

typedef struct {
	struct net *net;
} possible_net_t;

struct hlist_node {
	struct hlist_node *next;
} __attribute__((preserve_access_index));

struct hlist_head {
	struct hlist_node *first;
} __attribute__((preserve_access_index));

// A chain of the connection and listening tables ends in an odd "nulls"
// value rather than NULL.
struct hlist_nulls_node {
	struct hlist_nulls_node *next;
} __attribute__((preserve_access_index));

struct hlist_nulls_head {
	struct hlist_nulls_node *first;
} __attribute__((preserve_access_index));

struct in6_addr {
	union {
		__u8 u6_addr8[16];
		__u32 u6_addr32[4];
	} in6_u;
} __attribute__((preserve_access_index));

typedef struct {
	__s64 counter;
} atomic_long_t;

typedef struct {
	atomic_long_t refcnt;
} file_ref_t;

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

// The namespace's port range: `high << 16 | low` from Linux 6.8, a pair of
// ints under a seqlock before (the flavour below).
struct local_ports {
	__u32 range;
} __attribute__((preserve_access_index));

struct local_ports___pair {
	int range[2];
} __attribute__((preserve_access_index));

// A port's bucket in the bind hash, one per (namespace, port). Since Linux
// 6.8 its owners hang off its `bhash2` buckets, one per local address.
struct inet_bind_bucket {
	possible_net_t ib_net;
	unsigned short port;
	signed char fastreuse;
	signed char fastreuseport;
	struct hlist_node node;
	struct hlist_head bhash2;
} __attribute__((preserve_access_index));

// The same bucket before Linux 6.8: its owners hang off it directly, linked
// by their `skc_bind_node` as they are in the `bhash2` buckets since.
struct inet_bind_bucket___owners {
	struct hlist_head owners;
} __attribute__((preserve_access_index));

struct inet_bind2_bucket {
	struct hlist_node bhash_node;
	struct hlist_head owners;
} __attribute__((preserve_access_index));

struct inet_bind_hashbucket {
	struct hlist_head chain;
} __attribute__((preserve_access_index));

struct inet_ehash_bucket {
	struct hlist_nulls_head chain;
} __attribute__((preserve_access_index));

struct inet_listen_hashbucket {
	struct hlist_nulls_head nulls_head;
} __attribute__((preserve_access_index));

struct inet_hashinfo {
	struct inet_ehash_bucket *ehash;
	unsigned int ehash_mask;
	struct inet_bind_hashbucket *bhash;
	unsigned int bhash_size;
	unsigned int lhash2_mask;
	struct inet_listen_hashbucket *lhash2;
	// Since Linux 6.1: whether a namespace owns the table, rather than
	// the host's, which every other namespace shares.
	__u8 pernet;
} __attribute__((preserve_access_index));

// Since Linux 6.1 each namespace names its TCP hash tables here.
struct inet_timewait_death_row {
	struct inet_hashinfo *hashinfo;
} __attribute__((preserve_access_index));

// A slot of the UDP table, by port. Since Linux 6.14 `head` shares a union
// with the head of a nulls list, for the table by four-tuple.
struct udp_hslot {
	struct hlist_head head;
} __attribute__((preserve_access_index));

struct udp_table {
	struct udp_hslot *hash;
	unsigned int mask;
} __attribute__((preserve_access_index));

struct netns_ipv4 {
	struct inet_timewait_death_row tcp_death_row;
	// Since Linux 6.2: the namespace's UDP table.
	struct udp_table *udp_table;
	struct local_ports ip_local_ports;
} __attribute__((preserve_access_index));

struct netns_ipv4___pair {
	struct local_ports___pair ip_local_ports;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
	struct netns_ipv4 ipv4;
	__u64 net_cookie;
} __attribute__((preserve_access_index));

struct net___pair {
	struct netns_ipv4___pair ipv4;
} __attribute__((preserve_access_index));

struct proto {
	char name[32];
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	volatile unsigned char skc_state;
	int skc_bound_dev_if;
	struct hlist_node skc_bind_node;
	struct proto *skc_prot;
	possible_net_t skc_net;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	struct hlist_nulls_node skc_nulls_node;
} __attribute__((preserve_access_index));

struct inode {
	unsigned short i_mode;
	unsigned long i_ino;
} __attribute__((preserve_access_index));

struct socket {
	int state;
	struct sock *sk;
} __attribute__((preserve_access_index));

// A socket's inode is allocated with it: the kernel's SOCK_INODE().
struct socket_alloc {
	struct socket socket;
	struct inode vfs_inode;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u8 sk_userlocks;
	__u16 sk_protocol;
	int sk_err;
	struct socket *sk_socket;
	__u32 sk_ack_backlog;
	__u32 sk_max_ack_backlog;
} __attribute__((preserve_access_index));

struct inet_connection_sock {
	struct inet_bind_bucket *icsk_bind_hash;
} __attribute__((preserve_access_index));

struct tcp_sock {
	struct inet_connection_sock inet_conn;
	__u32 write_seq;
} __attribute__((preserve_access_index));

struct inet_timewait_sock {
	unsigned char tw_substate;
	__u32 tw_entry_stamp;
	struct inet_bind_bucket *tw_tb;
} __attribute__((preserve_access_index));

struct tcp_timewait_sock {
	struct inet_timewait_sock tw_sk;
	int tw_ts_recent_stamp;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
	atomic_long_t f_count;
	file_ref_t f_ref;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct nsproxy {
	struct net *net_ns;
} __attribute__((preserve_access_index));

struct task_struct {
	int pid;
	int tgid;
	char comm[16];
	struct task_struct *group_leader;
	struct files_struct *files;
	struct nsproxy *nsproxy;
} __attribute__((preserve_access_index));

struct pt_regs {
	unsigned long di;
	unsigned long si;
	unsigned long r8;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));

struct user_msghdr {
	void *msg_name;
} __attribute__((preserve_access_index));

// The contexts of the iterators the programs are.
struct bpf_iter_meta {
	struct seq_file *seq;
} __attribute__((preserve_access_index));

struct bpf_iter__tcp {
	struct bpf_iter_meta *meta;
	struct sock_common *sk_common;
} __attribute__((preserve_access_index));

struct bpf_iter__task_file {
	struct bpf_iter_meta *meta;
	struct task_struct *task;
	__u32 fd;
	struct file *file;
} __attribute__((preserve_access_index));

struct bpf_iter__bpf_map {
	struct bpf_iter_meta *meta;
	struct bpf_map *map;
} __attribute__((preserve_access_index));

#endif
