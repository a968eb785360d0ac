// SPDX-License-Identifier: GPL-2.0
//
// Counts, as they happen, the TCP `connect()` calls that found no free local
// port: a `tp_btf/inet_sock_set_state` program, attached for as long as the
// exporter runs.
//
// `tcp_v4_connect` and `tcp_v6_connect` (every kernel from 4.16, when the
// tracepoint came) move the socket to SYN_SENT, then ask
// `inet_hash_connect` for a port; when none is free it returns
// -EADDRNOTAVAIL and the socket goes back to CLOSE before it ever had one.
// The tracepoint fires after `tcp_set_state` released the port, so a local
// port of 0 tells nothing by itself. What such a socket lacks is what
// `connect()` sets once it has a port: its initial sequence number
// (`write_seq`, 0 until then). A connection refused, reset or timed out
// had its sequence number and carries an error (`sk_err`); one closed by
// the application in SYN_SENT had its sequence number too. A socket bound
// to a port of its own (`SOCK_BINDPORT_LOCK`) keeps its port, and its
// failure is a busy 4-tuple, not the range: it is not counted. An AF_INET6
// socket connecting to an IPv4-mapped peer goes through `tcp_v4_connect`,
// which fills the IPv4 fields: it is counted with those, as the IPv4
// destination it competes for. The tracepoint fires in the task that
// called `connect()`: the process is its thread group's, and is named by
// its leader's comm (as the owners program names processes), not by the
// calling thread's.
//
// Failures are counted per (namespace, destination, comm) in
// `portstat_fails`; one that finds it full is counted in `portstat_lost`
// and per (namespace, kind, protocol) in `portstat_totals`, so that a
// namespace's failures are the sum of the two, and a namespace that never
// failed takes no entry in either. Neither map ever loses an entry: a key
// that finds both full is counted in `portstat_lost` too. Every move to
// SYN_SENT of a socket with no port yet (each a `connect()` asking the
// range for one) is counted per namespace in `portstat_tries`, which bounds
// how many ports connects took between two samples. The names are the
// exporter's own, so that `inspect` finds the running exporter's maps by
// name (BPF_MAP_GET_NEXT_ID).
//
// A namespace is keyed by its inode and its cookie (`net_cookie`, Linux
// 5.14, never reused): the kernel hands a deleted namespace's inode to the
// next one at once, and the cookie tells the two apart, so that a new
// namespace inherits nothing of an old one's counts.
//
// Connects are counted too, and named, by `count_connects`, the program the
// exporter loads by default; `count_port_failures` is the same program
// without them (`--collector.failures.connects=false`), which costs a
// connect() what failure counting alone did. A `connect()` that asks the range for
// a port moves its socket from CLOSE to SYN_SENT in the calling task: the
// program notes the task's process by socket, in a slot of `portstat_notes`
// (an array, claimed with compare-and-swap) or, where the socket's slots
// are taken, in the socket's own storage (`portstat_spill`), which goes
// with the socket, so that no pile of connects in SYN_SENT can overflow
// it. The port is chosen after
// (`__inet_hash_connect`), so the connect is counted at the socket's first
// change out of SYN_SENT with the port taken: to ESTABLISHED, or back to
// CLOSE with its sequence number set (refused, reset, timed out or
// abandoned; it held a port meanwhile). Neither runs in the calling task
// (a SYN-ACK arrives in softirq), which is why the process was noted
// before. Connects are kept per (namespace, destination, comm) in
// `portstat_conns`; one that finds it full is counted in `portstat_lost`
// and per namespace in `portstat_ctots`, so that a namespace's connects
// are the sum of the two. When a process closes a connection on a port of
// its namespace's range that it did not bind by choice, its 4-tuple is
// kept with the process in `portstat_names`, least recently used first
// out, so that the socket, which may outlive its descriptor in FIN_WAIT,
// TIME_WAIT or LAST_ACK and is then held by no process, can be named;
// `portstat_lost` counts the names recorded, which tells the exporter how
// many the map evicted. A connection on a port bound by choice (a client
// that binds its source, or a listener's) is not named: its close removes
// the name an earlier connection on the same 4-tuple left, whose TIME_WAIT
// it may have taken over (`tcp_twsk_unique`), so that the socket is never
// named after a process that did not connect it. The connect path thus
// costs two array slots and one hash map entry, and a close that may leave
// TIME_WAIT one LRU entry.
//
// Only the namespaces in `portstat_nets`, the ones the exporter samples,
// are recorded at all: another namespace's connects, failures and closes
// return at the first look-up, take no entry and evict nothing.
//
// Nothing is decided here that Rust can decide. The kernel's structures
// are in `kernel.bpf.h`, the maps' keys and values the exporter reads in
// `records.bpf.h`. Rebuild the object with `src/source/bpf/build.sh`.

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>

#include "kernel.bpf.h"
#include "records.bpf.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
#define IPPROTO_UDP 17

#define EAGAIN 11
#define EADDRINUSE 98

// x86-64 system call numbers.
#define NR_CONNECT 42
#define NR_SENDTO 44
#define NR_SENDMSG 46
#define NR_BIND 49

#define TCP_ESTABLISHED 1
#define TCP_SYN_SENT 2
#define TCP_FIN_WAIT1 4
#define TCP_CLOSE 7
#define TCP_CLOSE_WAIT 8
#define TCP_LAST_ACK 9

// `sk_userlocks`: the socket was bound to a port of its own choosing.
#define SOCK_BINDPORT_LOCK 8

// `failure_key.kind` and `total_key.kind`.
#define KIND_CONNECT_FAILED 1
#define KIND_BIND_FAILED 2
#define KIND_CONNECT_ATTEMPT 3
#define KIND_CONNECTED 4

// `failure_key.family`: an AF_INET6 socket whose peer is IPv4-mapped, and
// whose addresses are therefore the IPv4 ones.
#define FAMILY_MAPPED 255

// `portstat_lost` indexes.
#define UNRECORDED_FAILURE 0
#define UNRECORDED_TOTAL 1
#define UNRECORDED_CONNECT 2
#define NAMES_RECORDED 3
// Not a count: 1 once a note went to the socket's own storage, so that the
// connect path looks there only after one has.
#define NOTES_SPILLED 4
#define UNRECORDED_ATTEMPT 5

// The start of `struct sockaddr_in` and `struct sockaddr_in6`: the port is
// at the same offset in both.
struct sockaddr_head {
	__u16 family;
	__be16 port;
	__u32 v4_or_flowinfo;
	__u8 v6[16];
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct failure_key);
	__type(value, struct failure_value);
} portstat_fails SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct total_key);
	__type(value, __u64);
} portstat_totals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct total_key);
	__type(value, __u64);
} portstat_tries SEC(".maps");

// The process that asked for a port, by socket, until the port is taken.
struct connector {
	__u32 tgid;
	char comm[16];
};

// The note of a `connect()` in flight: the socket, and the process that
// asked for its port.
struct note {
	__u64 sk;
	struct connector connector;
	__u32 pad;
};

#define NOTE_SLOTS 16384
#define NOTE_PROBES 4

// Notes in flight, each in one of `NOTE_PROBES` slots from a hash of its
// socket's address, claimed with compare-and-swap: an array costs the
// connect path no hash, no lock and no allocation.
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, NOTE_SLOTS);
	__type(key, __u32);
	__type(value, struct note);
} portstat_notes SEC(".maps");

// Notes that found their slots taken, kept in the socket itself
// (socket-local storage, Linux 5.11 for tracing programs): they live and
// go with the socket, so that no pile of connects in SYN_SENT, however
// large, loses one. Their memory is the socket's (`optmem_max`).
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, struct connector);
} portstat_spill SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct failure_key);
	__type(value, struct failure_value);
} portstat_conns SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, struct total_key);
	__type(value, __u64);
} portstat_ctots SEC(".maps");

// Sized at load against the range (`failures.rs`).
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct name_key);
	__type(value, struct name_value);
} portstat_names SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 6);
	__type(key, __u32);
	__type(value, __u64);
} portstat_lost SEC(".maps");

// The namespaces the exporter samples, by inode, which it keeps current:
// the only ones recorded, so that another namespace's traffic takes no
// entry of any map and evicts no name. Sized at load by what is sampled
// (`failures.rs`).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} portstat_nets SEC(".maps");

// Whether namespace `netns` is one the exporter samples.
static __always_inline int is_sampled(__u32 netns)
{
	return bpf_map_lookup_elem(&portstat_nets, &netns) != 0;
}

static void count_unrecorded(__u32 index)
{
	__u64 *count = bpf_map_lookup_elem(&portstat_lost, &index);
	if (count)
		__sync_fetch_and_add(count, 1);
}

// Adds one to `key`'s count in `map`, a `struct total_key` map; returns 0,
// or -1 where the map is full.
static __always_inline int add_to_total(void *map, struct total_key *key)
{
	__u64 one = 1;
	__u64 *count = bpf_map_lookup_elem(map, key);
	if (count) {
		__sync_fetch_and_add(count, 1);
		return 0;
	}
	// Another CPU may have made the entry meanwhile: then add to it.
	if (bpf_map_update_elem(map, key, &one, BPF_NOEXIST) == 0)
		return 0;
	count = bpf_map_lookup_elem(map, key);
	if (!count)
		return -1;
	__sync_fetch_and_add(count, 1);
	return 0;
}

// Counts a `connect()` of namespace `netns` asking the range for a port.
static void add_attempt(__u32 netns, __u64 cookie)
{
	struct total_key key = {.netns = netns, .kind = KIND_CONNECT_ATTEMPT,
				.protocol = IPPROTO_TCP, .cookie = cookie};
	if (add_to_total(&portstat_tries, &key) != 0)
		count_unrecorded(UNRECORDED_ATTEMPT);
}

// Adds one call of process `tgid` to `key`'s count in `map`, a
// `struct failure_key` map; returns 0, or -1 where the map is full.
static __always_inline int add_call(void *map, struct failure_key *key, __u32 tgid)
{
	struct failure_value first = {.count = 1, .last_tgid = tgid};
	struct failure_value *value = bpf_map_lookup_elem(map, key);
	if (!value) {
		if (bpf_map_update_elem(map, key, &first, BPF_NOEXIST) == 0)
			return 0;
		value = bpf_map_lookup_elem(map, key);
		if (!value)
			return -1;
	}
	__sync_fetch_and_add(&value->count, 1);
	if (value->last_tgid != tgid) {
		value->several = 1;
		value->last_tgid = tgid;
	}
	return 0;
}

// Counts a failure by destination and process, or, where that map is
// full, as unrecorded and by namespace alone (a namespace's failures are
// the sum of both).
static void add_failure(struct failure_key *key)
{
	if (add_call(&portstat_fails, key, bpf_get_current_pid_tgid() >> 32) == 0)
		return;
	count_unrecorded(UNRECORDED_FAILURE);
	struct total_key total = {.netns = key->netns, .kind = key->kind,
				  .protocol = key->protocol, .cookie = key->cookie};
	if (add_to_total(&portstat_totals, &total) != 0)
		count_unrecorded(UNRECORDED_TOTAL);
}

// The namespace's cookie, which no other namespace ever had; 0 before
// Linux 5.14, where `net_cookie` is not a plain number.
static __always_inline __u64 cookie_of(struct net *net)
{
	if (bpf_core_field_exists(net->net_cookie))
		return net->net_cookie;
	return 0;
}

static int is_v4_mapped(const __u8 *address)
{
	for (int i = 0; i < 10; i++)
		if (address[i])
			return 0;
	return address[10] == 0xff && address[11] == 0xff;
}

// Copies the socket's addresses, in network order, and returns the family
// they are of: AF_INET, AF_INET6, or FAMILY_MAPPED for an AF_INET6 socket
// with an IPv4-mapped peer, whose addresses are the IPv4 ones.
static __u8 read_addresses(struct sock *sk, __u8 *local, __u8 *remote)
{
	unsigned short family = sk->__sk_common.skc_family;
	struct in6_addr remote6 = sk->__sk_common.skc_v6_daddr;
	if (family == AF_INET6 && !is_v4_mapped(remote6.in6_u.u6_addr8)) {
		struct in6_addr local6 = sk->__sk_common.skc_v6_rcv_saddr;
		__builtin_memcpy(local, local6.in6_u.u6_addr8, 16);
		__builtin_memcpy(remote, remote6.in6_u.u6_addr8, 16);
		return AF_INET6;
	}
	__be32 local4 = sk->__sk_common.skc_rcv_saddr;
	__be32 remote4 = sk->__sk_common.skc_daddr;
	__builtin_memcpy(local, &local4, 4);
	__builtin_memcpy(remote, &remote4, 4);
	return family == AF_INET6 ? FAMILY_MAPPED : AF_INET;
}

// The calling process's name: its thread group leader's comm, which the
// kernel keeps padded with NULs.
static __always_inline void read_comm(char *comm)
{
	struct task_struct *task = bpf_get_current_task_btf();
	__builtin_memcpy(comm, task->group_leader->comm, 16);
}

static __always_inline __u32 note_slot(__u64 sk, __u32 probe)
{
	return ((sk * 0x9E3779B97F4A7C15ULL) >> 50) + probe * 4099;
}

// Notes the calling task's process as the one asking a port for `sk`,
// whose address is `id`: in an array slot, or where the socket's slots
// are taken, in the socket's own storage. A note the kernel has no memory
// for there is counted at once as an unrecorded connect of the namespace:
// the connect it was for cannot be counted when it takes its port.
static void note_connector(__u64 id, struct sock *sk, __u32 netns, __u64 cookie)
{
	struct connector connector = {.tgid = bpf_get_current_pid_tgid() >> 32};
	read_comm(connector.comm);
	for (__u32 probe = 0; probe < NOTE_PROBES; probe++) {
		__u32 index = note_slot(id, probe) % NOTE_SLOTS;
		struct note *note = bpf_map_lookup_elem(&portstat_notes, &index);
		if (!note)
			return;
		// A slot left with this socket's address is stale: the socket
		// was freed and its memory reused.
		__u64 held = __sync_val_compare_and_swap(&note->sk, 0, id);
		if (held == 0 || held == id) {
			note->connector = connector;
			return;
		}
	}
	__u32 spilled = NOTES_SPILLED;
	__u64 *flag = bpf_map_lookup_elem(&portstat_lost, &spilled);
	if (flag && *flag == 0)
		__sync_fetch_and_add(flag, 1);
	struct connector *note =
		bpf_sk_storage_get(&portstat_spill, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
	if (!note) {
		count_unrecorded(UNRECORDED_CONNECT);
		struct total_key total = {.netns = netns, .kind = KIND_CONNECTED,
					  .protocol = IPPROTO_TCP, .cookie = cookie};
		add_to_total(&portstat_ctots, &total);
		return;
	}
	*note = connector;
}

// Takes the note of `sk`, whose address is `id`, into `connector`,
// freeing it; returns whether there was one.
static int take_note(__u64 id, struct sock *sk, struct connector *connector)
{
	for (__u32 probe = 0; probe < NOTE_PROBES; probe++) {
		__u32 index = note_slot(id, probe) % NOTE_SLOTS;
		struct note *note = bpf_map_lookup_elem(&portstat_notes, &index);
		if (!note)
			return 0;
		if (note->sk == id) {
			*connector = note->connector;
			__sync_lock_test_and_set(&note->sk, 0);
			return 1;
		}
	}
	__u32 spilled = NOTES_SPILLED;
	__u64 *flag = bpf_map_lookup_elem(&portstat_lost, &spilled);
	if (!flag || *flag == 0)
		return 0;
	struct connector *note = bpf_sk_storage_get(&portstat_spill, sk, 0, 0);
	if (!note)
		return 0;
	*connector = *note;
	bpf_sk_storage_delete(&portstat_spill, sk);
	return 1;
}

// Counts a connect of `connector`'s process that took a port: by
// destination and process, or, where that map is full, as unrecorded and
// by namespace alone (a namespace's total is the sum of both).
static void count_connect(struct sock *sk, __u32 netns, __u64 cookie,
			  struct connector *connector)
{
	struct failure_key key = {};
	key.netns = netns;
	key.cookie = cookie;
	key.kind = KIND_CONNECTED;
	key.protocol = IPPROTO_TCP;
	key.remote_port = __builtin_bswap16(sk->__sk_common.skc_dport);
	key.family = read_addresses(sk, key.local, key.remote);
	__builtin_memcpy(key.comm, connector->comm, sizeof(key.comm));
	if (add_call(&portstat_conns, &key, connector->tgid) == 0)
		return;
	count_unrecorded(UNRECORDED_CONNECT);
	struct total_key total = {.netns = netns, .kind = KIND_CONNECTED,
				  .protocol = IPPROTO_TCP, .cookie = cookie};
	add_to_total(&portstat_ctots, &total);
}

// Whether `port` is in the range of namespace `net`: a port `connect()`
// may have chosen, not one a listener's connections share.
static int in_range(struct net *net, __u16 port)
{
	// The size of the whole structure tells the layouts apart: a field's
	// own relocation fails where its type is the other layout's.
	if (bpf_core_type_size(struct local_ports) <= 2 * sizeof(__u32)) {
		__u32 range = BPF_CORE_READ(net, ipv4.ip_local_ports.range);
		return port >= (range & 0xffff) && port <= (range >> 16);
	}
	struct net___pair *pair = (struct net___pair *)net;
	int low = BPF_CORE_READ(pair, ipv4.ip_local_ports.range[0]);
	int high = BPF_CORE_READ(pair, ipv4.ip_local_ports.range[1]);
	return port >= low && port <= high;
}

// Names the connection of `sk`, which its process is closing, after that
// process: the socket may outlive its descriptor (FIN_WAIT, TIME_WAIT,
// LAST_ACK), and is then held by no process. A socket `bound` to its port
// by choice is not named, and the name of its 4-tuple is removed: it was
// an earlier connection's, whose TIME_WAIT this one may have taken over.
static void name_connection(struct sock *sk, __u32 netns, __u64 cookie, int bound)
{
	struct name_key name = {};
	name.netns = netns;
	name.cookie = cookie;
	name.family = read_addresses(sk, name.local, name.remote);
	name.local_port = sk->__sk_common.skc_num;
	name.remote_port = __builtin_bswap16(sk->__sk_common.skc_dport);
	if (bound) {
		bpf_map_delete_elem(&portstat_names, &name);
		return;
	}
	struct name_value value = {.tgid = bpf_get_current_pid_tgid() >> 32,
				   .stamp = bpf_ktime_get_ns()};
	read_comm(value.comm);
	// A new entry is counted; one that replaces the name of an earlier
	// connection on the same 4-tuple is not.
	if (bpf_map_update_elem(&portstat_names, &name, &value, BPF_NOEXIST) == 0)
		count_unrecorded(NAMES_RECORDED);
	else
		bpf_map_update_elem(&portstat_names, &name, &value, BPF_ANY);
}

// A TCP state change: failures and attempts counted, and with `connects`
// (a constant in each program below) connects counted and named too.
static __always_inline int on_state_change(__u64 *ctx, const int connects)
{
	struct sock *sk = (struct sock *)ctx[0];
	int oldstate = (int)ctx[1];
	int newstate = (int)ctx[2];

	// Every other change returns here, having read nothing of the socket.
	int attempt = oldstate == TCP_CLOSE && newstate == TCP_SYN_SENT;
	int closing = connects &&
		      ((oldstate == TCP_ESTABLISHED && newstate == TCP_FIN_WAIT1) ||
		       (oldstate == TCP_CLOSE_WAIT && newstate == TCP_LAST_ACK));
	int resolved = oldstate == TCP_SYN_SENT && (connects || newstate == TCP_CLOSE);
	if (!attempt && !closing && !resolved)
		return 0;
	if (sk->sk_protocol != IPPROTO_TCP)
		return 0;
	struct net *net = sk->__sk_common.skc_net.net;
	__u32 netns = net->ns.inum;
	if (!is_sampled(netns))
		return 0;
	__u64 cookie = cookie_of(net);
	if (closing) {
		// Only a port of the range.
		if (in_range(net, sk->__sk_common.skc_num))
			name_connection(sk, netns, cookie,
					BPF_CORE_READ_BITFIELD(sk, sk_userlocks) & SOCK_BINDPORT_LOCK);
		return 0;
	}
	// The socket's address, as a number to hash (the verifier allows no
	// arithmetic on the pointer itself).
	__u64 id = 0;
	if (connects)
		bpf_probe_read_kernel(&id, sizeof(id), &ctx[0]);
	if (attempt) {
		// Only a connect() whose socket has no port yet asks the range
		// for one; a socket bound to its port before keeps it.
		if (sk->__sk_common.skc_num == 0) {
			add_attempt(netns, cookie);
			if (connects)
				note_connector(id, sk, netns, cookie);
		}
		return 0;
	}
	// The socket's first change out of SYN_SENT: its note goes, whatever
	// became of the connect.
	struct connector connector = {};
	int noted = connects && take_note(id, sk, &connector);
	if (newstate == TCP_ESTABLISHED) {
		if (noted)
			count_connect(sk, netns, cookie, &connector);
		return 0;
	}
	if (newstate != TCP_CLOSE)
		return 0;
	// Past the end of `struct sock`, which is all the tracepoint's
	// argument is typed as: read it, relocated, as kernel memory.
	if (BPF_CORE_READ((struct tcp_sock *)sk, write_seq) != 0) {
		if (noted)
			count_connect(sk, netns, cookie, &connector);
		return 0;
	}
	if (sk->__sk_common.skc_num != 0 || sk->sk_err != 0)
		return 0;

	struct failure_key key = {};
	key.netns = netns;
	key.cookie = cookie;
	key.kind = KIND_CONNECT_FAILED;
	key.protocol = IPPROTO_TCP;
	key.remote_port = __builtin_bswap16(sk->__sk_common.skc_dport);
	key.family = read_addresses(sk, key.local, key.remote);
	struct task_struct *task = bpf_get_current_task_btf();
	bpf_probe_read_kernel_str(key.comm, sizeof(key.comm), task->group_leader->comm);
	add_failure(&key);
	return 0;
}

// Failures and attempts only: `--collector.failures.connects=false`.
SEC("tp_btf/inet_sock_set_state")
int count_port_failures(__u64 *ctx)
{
	return on_state_change(ctx, 0);
}

// Failures, attempts, and connects counted and named: the default.
SEC("tp_btf/inet_sock_set_state")
int count_connects(__u64 *ctx)
{
	return on_state_change(ctx, 1);
}

// The socket behind descriptor `fd` of the calling task, read as kernel
// memory: a descriptor whose bind(), connect() or sendto() failed as these
// did is a socket (any other file fails with ENOTSOCK).
static struct sock *socket_of(unsigned long fd)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct fdtable *fdt = BPF_CORE_READ(task, files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	struct file **files = BPF_CORE_READ(fdt, fd);
	struct file *file = 0;
	bpf_probe_read_kernel(&file, sizeof(file), &files[fd]);
	if (!file)
		return 0;
	struct socket *socket = BPF_CORE_READ(file, private_data);
	return socket ? BPF_CORE_READ(socket, sk) : 0;
}

// Fills the key's family and one address from a caller's socket address.
static int read_address(struct failure_key *key, __u8 *address, const void *user)
{
	struct sockaddr_head head = {};
	if (!user || bpf_probe_read_user(&head, sizeof(head), user) != 0)
		return -1;
	if (head.family == AF_INET) {
		key->family = AF_INET;
		__builtin_memcpy(address, &head.v4_or_flowinfo, 4);
	} else if (head.family == AF_INET6 && is_v4_mapped(head.v6)) {
		key->family = FAMILY_MAPPED;
		__builtin_memcpy(address, &head.v6[12], 4);
	} else if (head.family == AF_INET6) {
		key->family = AF_INET6;
		__builtin_memcpy(address, head.v6, 16);
	} else {
		return -1;
	}
	return __builtin_bswap16(head.port);
}

// The failures no socket state shows: bind() to port 0 that found no port
// (EADDRINUSE from `inet_csk_get_port` or `udp_lib_get_port`), and a UDP
// socket's connect() or sendto()/sendmsg() whose automatic bind found none
// (EAGAIN from `inet_autobind`; the socket still has no port, which tells
// it from a full send buffer). Read at the exit of every system call, on
// x86-64, where the registers still hold the call's arguments; the return
// value is tested first, so that a call that succeeded costs one compare.
SEC("tp_btf/sys_exit")
int count_autobind_failures(__u64 *ctx)
{
	long ret = (long)ctx[1];
	if (ret != -EADDRINUSE && ret != -EAGAIN)
		return 0;
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long nr = regs->orig_ax;
	struct failure_key key = {};
	if (ret == -EADDRINUSE && nr == NR_BIND) {
		if (read_address(&key, key.local, (const void *)regs->si) != 0)
			return 0;
		key.kind = KIND_BIND_FAILED;
	} else if (ret == -EAGAIN && (nr == NR_CONNECT || nr == NR_SENDTO || nr == NR_SENDMSG)) {
		const void *name = (const void *)regs->si;
		if (nr == NR_SENDTO)
			name = (const void *)regs->r8;
		else if (nr == NR_SENDMSG)
			name = BPF_CORE_READ_USER((struct user_msghdr *)regs->si, msg_name);
		int port = read_address(&key, key.remote, name);
		if (port < 0)
			return 0;
		key.remote_port = port;
		key.kind = KIND_CONNECT_FAILED;
	} else {
		return 0;
	}
	struct sock *sk = socket_of(regs->di);
	if (!sk)
		return 0;
	__u16 protocol = BPF_CORE_READ(sk, sk_protocol);
	if (key.kind == KIND_CONNECT_FAILED &&
	    (protocol != IPPROTO_UDP || BPF_CORE_READ(sk, __sk_common.skc_num) != 0))
		return 0;
	if (protocol != IPPROTO_TCP && protocol != IPPROTO_UDP)
		return 0;
	key.protocol = protocol;
	struct net *net = BPF_CORE_READ(sk, __sk_common.skc_net.net);
	key.netns = BPF_CORE_READ(net, ns.inum);
	if (!is_sampled(key.netns))
		return 0;
	if (bpf_core_field_exists(net->net_cookie))
		key.cookie = BPF_CORE_READ(net, net_cookie);
	struct task_struct *task = bpf_get_current_task_btf();
	bpf_probe_read_kernel_str(key.comm, sizeof(key.comm), task->group_leader->comm);
	add_failure(&key);
	return 0;
}

char LICENSE[] SEC("license") = "GPL";
