/*
 * scripts/xenshim.c: just enough of a Xen hypervisor for Xen 4.17's two xenstore daemons, the C
 * `xenstored` and the OCaml `oxenstored`, to run as dom0's store on an ordinary Linux machine.
 * It is loaded into the daemon with LD_PRELOAD (scripts/run-xenstored.sh does that) and takes
 * the place of the few entry points of libxenctrl, libxenevtchn and libxengnttab the daemons call,
 * plus a few libc calls. Built by scripts/xen-tools.sh against the unpacked Xen headers, so that
 * the structures it fills in are Xen's own.
 *
 * Everything lives in one directory, $XS_SHIM_DIR (default: the current directory):
 *
 *   domains     which domains exist, one per line: `<domid> [dying] [shutdown] [crashed]
 *               [reason=<n>]` (`#` starts a comment). Read again at every query; when the file
 *               is missing only dom0 exists. The C daemon refuses owners that do not exist.
 *   ring-<id>   the 4096-byte xenstore page of domain <id>. Grant mappings and foreign mappings
 *               of a domain map this file; ring-0 is dom0's page (/proc/xen/xsd_kva).
 *   xsd_port    dom0's xenstore event channel as the daemon reads it from /proc/xen/xsd_port.
 *   evtchn      a FIFO: every 4-byte little-endian port number written into it is an event on
 *               that port for the daemon.
 *   port-<id>   written when the daemon binds domain <id>'s channel: "<local> <remote>". A
 *               domain kicks the daemon by writing <local> into `evtchn`.
 *   virq-<n>    written when the daemon binds VIRQ <n>: its local port. Writing the port of
 *               virq-3 (VIRQ_DOM_EXC) into `evtchn` makes the daemon look at `domains` again.
 *   notify      optional FIFO: if someone has it open for reading, the ports the daemon
 *               notifies are written into it; otherwise notifications are dropped.
 *   socket      oxenstored binds its compiled-in /var/run/xenstored/socket here instead.
 *
 * Other fixes: oxenstored raises RLIMIT_NOFILE to fs.nr_open at start, which needs
 * CAP_SYS_RESOURCE; the shim retries within the hard limit. XS_SHIM_DEBUG=1 logs every call.
 */
#define _GNU_SOURCE
#define XC_WANT_COMPAT_MAP_FOREIGN_API 1
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stddef.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <xenctrl.h>
#include <xenevtchn.h>
#include <xengnttab.h>

#define PAGE_BYTES 4096
#define MAX_DOMAINS 512
#define MAX_PORTS 4096
#define SHUTDOWN_CRASH 3 /* SHUTDOWN_crash of xen/sched.h */

/* The opaque handles of the libraries; nothing in them is used. */
struct xc_interface_core { int unused; };
struct xenevtchn_handle { int fd; };
struct xengntdev_handle { int unused; };

/* ---------------------------------------------------------------------------------------------
 * Small helpers */

static void trace(const char *fmt, ...)
{
    static int on = -1;
    if (on < 0) on = getenv("XS_SHIM_DEBUG") != NULL && strcmp(getenv("XS_SHIM_DEBUG"), "0") != 0;
    if (!on) return;
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    fprintf(stderr, "xenshim[%d]: %s\n", (int)getpid(), line);
}

/* The real libc functions that are wrapped below. */
static int (*libc_open)(const char *, int, ...);
static int (*libc_open64)(const char *, int, ...);
static int (*libc_bind)(int, const struct sockaddr *, socklen_t);
static int (*libc_unlink)(const char *);
static int (*libc_setrlimit)(__rlimit_resource_t, const struct rlimit *);

static void find_libc(void)
{
    if (libc_open != NULL) return;
    libc_open64 = dlsym(RTLD_NEXT, "open64");
    libc_bind = dlsym(RTLD_NEXT, "bind");
    libc_unlink = dlsym(RTLD_NEXT, "unlink");
    libc_setrlimit = dlsym(RTLD_NEXT, "setrlimit");
    libc_open = dlsym(RTLD_NEXT, "open");
}

static const char *state_dir(void)
{
    const char *d = getenv("XS_SHIM_DIR");
    return d != NULL && d[0] != '\0' ? d : ".";
}

/* `out` = $XS_SHIM_DIR/<name>; false when it does not fit. */
static bool in_state_dir(char *out, size_t size, const char *name)
{
    int n = snprintf(out, size, "%s/%s", state_dir(), name);
    return n > 0 && (size_t)n < size;
}

static void put_file(const char *name, const char *text)
{
    char path[PATH_MAX];
    if (!in_state_dir(path, sizeof(path), name)) return;
    find_libc();
    int fd = libc_open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return;
    size_t len = strlen(text);
    ssize_t w = write(fd, text, len);
    (void)w;
    close(fd);
}

/* Opens (creating it if need be) a file of the state directory at least one page long. */
static int open_page_file(const char *name)
{
    char path[PATH_MAX];
    struct stat st;
    if (!in_state_dir(path, sizeof(path), name)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    find_libc();
    int fd = libc_open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0) return -1;
    if (fstat(fd, &st) == 0 && st.st_size < PAGE_BYTES && ftruncate(fd, PAGE_BYTES) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

/* A domain's xenstore page: ring-<domid>, shared with whoever else maps the file. */
static void *map_store_page(uint32_t domid)
{
    char name[32];
    snprintf(name, sizeof(name), "ring-%u", domid);
    int fd = open_page_file(name);
    if (fd < 0) return NULL;
    void *page = mmap(NULL, PAGE_BYTES, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    trace("map page of dom%u: %p", domid, page);
    return page == MAP_FAILED ? NULL : page;
}

/* ---------------------------------------------------------------------------------------------
 * The domains file */

struct domain_state {
    uint32_t domid;
    bool dying, shutdown, crashed;
    unsigned int reason;
};

static bool parse_domain_line(char *line, struct domain_state *d)
{
    char *hash = strchr(line, '#');
    if (hash != NULL) *hash = '\0';
    char *save = NULL;
    char *word = strtok_r(line, " \t\r\n", &save);
    if (word == NULL) return false;
    char *end;
    unsigned long id = strtoul(word, &end, 10);
    if (*end != '\0' || id > 0x7fef) return false;
    memset(d, 0, sizeof(*d));
    d->domid = (uint32_t)id;
    while ((word = strtok_r(NULL, " \t\r\n", &save)) != NULL) {
        if (strcmp(word, "dying") == 0) {
            d->dying = true;
        } else if (strcmp(word, "shutdown") == 0) {
            d->shutdown = true;
        } else if (strcmp(word, "crashed") == 0) {
            d->crashed = d->shutdown = true;
            d->reason = SHUTDOWN_CRASH;
        } else if (strncmp(word, "reason=", 7) == 0) {
            d->reason = (unsigned int)strtoul(word + 7, NULL, 10);
        }
    }
    return true;
}

/* Fills `out` with the domains whose id is >= first, in increasing id order; returns how many. */
static int domains_from(uint32_t first, struct domain_state *out, int max)
{
    static struct domain_state all[MAX_DOMAINS];
    int n = 0;
    char path[PATH_MAX];
    FILE *f = in_state_dir(path, sizeof(path), "domains") ? fopen(path, "re") : NULL;
    if (f == NULL) {
        memset(&all[0], 0, sizeof(all[0]));
        n = 1;
    } else {
        char line[256];
        while (n < MAX_DOMAINS && fgets(line, sizeof(line), f) != NULL)
            if (parse_domain_line(line, &all[n])) n++;
        fclose(f);
    }
    /* selection by repeated minimum: the list is short */
    int got = 0;
    int64_t after = (int64_t)first - 1;
    while (got < max) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if ((int64_t)all[i].domid > after && (best < 0 || all[i].domid < all[best].domid)) best = i;
        if (best < 0) break;
        out[got++] = all[best];
        after = all[best].domid;
    }
    return got;
}

/* ---------------------------------------------------------------------------------------------
 * libxenctrl */

xc_interface *xc_interface_open(xentoollog_logger *logger, xentoollog_logger *dombuild_logger, unsigned open_flags)
{
    (void)logger;
    (void)dombuild_logger;
    (void)open_flags;
    trace("xc_interface_open");
    return calloc(1, sizeof(struct xc_interface_core));
}

int xc_interface_close(xc_interface *xch)
{
    free(xch);
    return 0;
}

static xc_error no_error;

const xc_error *xc_get_last_error(xc_interface *xch)
{
    (void)xch;
    return &no_error;
}

const char *xc_error_code_to_desc(int code)
{
    (void)code;
    return "no hypervisor (xenshim)";
}

int xc_domain_getinfo(xc_interface *xch, uint32_t first_domid, unsigned int max_doms, xc_dominfo_t *info)
{
    struct domain_state found[MAX_DOMAINS];
    (void)xch;
    int n = domains_from(first_domid, found, max_doms < MAX_DOMAINS ? (int)max_doms : MAX_DOMAINS);
    for (int i = 0; i < n; i++) {
        xc_dominfo_t *o = &info[i];
        memset(o, 0, sizeof(*o));
        o->domid = found[i].domid;
        o->dying = found[i].dying;
        o->shutdown = found[i].shutdown;
        o->crashed = found[i].crashed;
        o->shutdown_reason = found[i].reason;
        o->running = !found[i].dying && !found[i].shutdown;
        o->nr_online_vcpus = 1;
    }
    trace("xc_domain_getinfo(%u, %u) = %d", first_domid, max_doms, n);
    return n;
}

int xc_domain_getinfolist(xc_interface *xch, uint32_t first_domain, unsigned int max_domains, xc_domaininfo_t *info)
{
    struct domain_state found[MAX_DOMAINS];
    (void)xch;
    int n = domains_from(first_domain, found, max_domains < MAX_DOMAINS ? (int)max_domains : MAX_DOMAINS);
    for (int i = 0; i < n; i++) {
        xc_domaininfo_t *o = &info[i];
        uint32_t flags = (found[i].reason & XEN_DOMINF_shutdownmask) << XEN_DOMINF_shutdownshift;
        if (found[i].dying) flags |= XEN_DOMINF_dying;
        if (found[i].shutdown) flags |= XEN_DOMINF_shutdown;
        if (!found[i].dying && !found[i].shutdown) flags |= XEN_DOMINF_running;
        memset(o, 0, sizeof(*o));
        o->domain = (domid_t)found[i].domid;
        o->flags = flags;
        o->nr_online_vcpus = 1;
    }
    trace("xc_domain_getinfolist(%u, %u) = %d", first_domain, max_domains, n);
    return n;
}

void *xc_map_foreign_range(xc_interface *xch, uint32_t dom, int size, int prot, unsigned long mfn)
{
    (void)xch;
    (void)size;
    (void)prot;
    (void)mfn;
    return map_store_page(dom);
}

/* ---------------------------------------------------------------------------------------------
 * libxengnttab: the daemon maps a guest's xenstore page through its reserved grant */

xengnttab_handle *xengnttab_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    return calloc(1, sizeof(struct xengntdev_handle));
}

int xengnttab_close(xengnttab_handle *xgt)
{
    free(xgt);
    return 0;
}

int xengnttab_set_max_grants(xengnttab_handle *xgt, uint32_t nr_grants)
{
    (void)xgt;
    (void)nr_grants;
    return 0;
}

void *xengnttab_map_grant_ref(xengnttab_handle *xgt, uint32_t domid, uint32_t ref, int prot)
{
    (void)xgt;
    (void)ref;
    (void)prot;
    return map_store_page(domid);
}

int xengnttab_unmap(xengnttab_handle *xgt, void *start_address, uint32_t count)
{
    (void)xgt;
    return munmap(start_address, (size_t)count * PAGE_BYTES);
}

/* ---------------------------------------------------------------------------------------------
 * libxenevtchn: ports are numbers handed out here; events arrive through the `evtchn` FIFO */

static int last_port;                 /* ports are handed out 1, 2, 3, ... */
static int32_t port_domain[MAX_PORTS]; /* local port -> domid + 1 of an interdomain binding */

static int open_fifo(const char *name, int flags)
{
    char path[PATH_MAX];
    if (!in_state_dir(path, sizeof(path), name)) {
        errno = ENAMETOOLONG;
        return -1;
    }
    if (mkfifo(path, 0600) != 0 && errno != EEXIST) return -1;
    find_libc();
    return libc_open(path, flags);
}

xenevtchn_handle *xenevtchn_open(struct xentoollog_logger *logger, unsigned open_flags)
{
    (void)logger;
    struct xenevtchn_handle *h = calloc(1, sizeof(*h));
    if (h == NULL) return NULL;
    /* O_RDWR: the FIFO always has a writer, so the daemon never sees end-of-file */
    int flags = O_RDWR | O_NONBLOCK | ((open_flags & XENEVTCHN_NO_CLOEXEC) ? 0 : O_CLOEXEC);
    h->fd = open_fifo("evtchn", flags);
    if (h->fd < 0) {
        free(h);
        return NULL;
    }
    trace("xenevtchn_open: fd %d", h->fd);
    return h;
}

xenevtchn_handle *xenevtchn_fdopen(struct xentoollog_logger *logger, int fd, unsigned open_flags)
{
    (void)logger;
    (void)open_flags;
    struct xenevtchn_handle *h = calloc(1, sizeof(*h));
    if (h != NULL) h->fd = fd;
    return h;
}

int xenevtchn_close(xenevtchn_handle *xce)
{
    if (xce == NULL) return 0;
    close(xce->fd);
    free(xce);
    return 0;
}

int xenevtchn_fd(xenevtchn_handle *xce)
{
    return xce->fd;
}

xenevtchn_port_or_error_t xenevtchn_pending(xenevtchn_handle *xce)
{
    uint8_t b[4];
    ssize_t n = read(xce->fd, b, sizeof(b));
    if (n != (ssize_t)sizeof(b)) {
        errno = n < 0 ? errno : EAGAIN;
        return -1;
    }
    uint32_t port = (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24;
    trace("event on port %u", port);
    return (xenevtchn_port_or_error_t)port;
}

int xenevtchn_unmask(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce;
    (void)port;
    return 0;
}

int xenevtchn_notify(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce;
    char path[PATH_MAX];
    trace("notify port %u", port);
    if (!in_state_dir(path, sizeof(path), "notify")) return 0;
    find_libc();
    /* only when a reader has the FIFO open (otherwise ENXIO or ENOENT: the event is dropped) */
    int fd = libc_open(path, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0) {
        uint8_t b[4] = { port & 0xff, (port >> 8) & 0xff, (port >> 16) & 0xff, (port >> 24) & 0xff };
        ssize_t w = write(fd, b, sizeof(b));
        (void)w;
        close(fd);
    }
    return 0;
}

static int new_port(void)
{
    if (last_port + 1 >= MAX_PORTS) {
        errno = ENOSPC;
        return -1;
    }
    return ++last_port;
}

xenevtchn_port_or_error_t xenevtchn_bind_interdomain(xenevtchn_handle *xce, uint32_t domid, evtchn_port_t remote_port)
{
    (void)xce;
    int port = new_port();
    if (port < 0) return -1;
    port_domain[port] = (int32_t)domid + 1;
    char name[32], text[48];
    snprintf(name, sizeof(name), "port-%u", domid);
    snprintf(text, sizeof(text), "%d %u\n", port, remote_port);
    put_file(name, text);
    trace("bind dom%u's port %u: local port %d", domid, remote_port, port);
    return port;
}

xenevtchn_port_or_error_t xenevtchn_bind_virq(xenevtchn_handle *xce, unsigned int virq)
{
    (void)xce;
    int port = new_port();
    if (port < 0) return -1;
    char name[32], text[16];
    snprintf(name, sizeof(name), "virq-%u", virq);
    snprintf(text, sizeof(text), "%d\n", port);
    put_file(name, text);
    trace("bind virq %u: local port %d", virq, port);
    return port;
}

int xenevtchn_unbind(xenevtchn_handle *xce, evtchn_port_t port)
{
    (void)xce;
    if (port < MAX_PORTS && port_domain[port] != 0) {
        char name[32], path[PATH_MAX];
        snprintf(name, sizeof(name), "port-%d", port_domain[port] - 1);
        port_domain[port] = 0;
        find_libc();
        if (in_state_dir(path, sizeof(path), name)) libc_unlink(path);
    }
    trace("unbind port %u", port);
    return 0;
}

/* ---------------------------------------------------------------------------------------------
 * libc: /proc/xen files, the compiled-in socket path, the file-descriptor limit */

/* dom0's page and port, which the daemons read from /proc/xen; NULL for every other path. */
static const char *proc_xen_file(const char *path, char *buf, size_t size)
{
    if (path == NULL) return NULL;
    if (strcmp(path, "/proc/xen/xsd_kva") == 0) {
        int fd = open_page_file("ring-0");
        if (fd >= 0) close(fd);
        return in_state_dir(buf, size, "ring-0") ? buf : NULL;
    }
    if (strcmp(path, "/proc/xen/xsd_port") == 0) {
        if (!in_state_dir(buf, size, "xsd_port")) return NULL;
        /* no newline: oxenstored parses the whole file as one integer */
        if (access(buf, F_OK) != 0) put_file("xsd_port", "1");
        return buf;
    }
    return NULL;
}

static int open_with(int (*real)(const char *, int, ...), const char *path, int flags, va_list ap)
{
    mode_t mode = (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
    char buf[PATH_MAX];
    const char *other = proc_xen_file(path, buf, sizeof(buf));
    if (other != NULL) trace("open %s -> %s", path, other);
    return real(other != NULL ? other : path, flags, mode);
}

int open(const char *path, int flags, ...)
{
    find_libc();
    va_list ap;
    va_start(ap, flags);
    int fd = open_with(libc_open, path, flags, ap);
    va_end(ap);
    return fd;
}

int open64(const char *path, int flags, ...)
{
    find_libc();
    va_list ap;
    va_start(ap, flags);
    int fd = open_with(libc_open64 != NULL ? libc_open64 : libc_open, path, flags, ap);
    va_end(ap);
    return fd;
}

/* The daemon's socket under $XS_SHIM_DIR for a path in Xen's run directory (only when
 * XS_SHIM_DIR is set: without it the daemon keeps its own paths). */
static bool moved_socket(const char *path, char *buf, size_t size)
{
    static const char *const run_dirs[] = { "/var/run/xenstored/", "/run/xenstored/" };
    if (path == NULL || getenv("XS_SHIM_DIR") == NULL) return false;
    for (size_t i = 0; i < sizeof(run_dirs) / sizeof(run_dirs[0]); i++) {
        size_t len = strlen(run_dirs[i]);
        if (strncmp(path, run_dirs[i], len) == 0 && strchr(path + len, '/') == NULL && path[len] != '\0')
            return in_state_dir(buf, size, path + len);
    }
    return false;
}

int bind(int sockfd, const struct sockaddr *addr, socklen_t addrlen)
{
    find_libc();
    if (addr != NULL && addr->sa_family == AF_UNIX && addrlen > offsetof(struct sockaddr_un, sun_path)) {
        const struct sockaddr_un *un = (const struct sockaddr_un *)addr;
        char path[sizeof(un->sun_path) + 1];
        size_t len = addrlen - offsetof(struct sockaddr_un, sun_path);
        if (len > sizeof(un->sun_path)) len = sizeof(un->sun_path);
        memcpy(path, un->sun_path, len);
        path[len] = '\0';
        char moved[PATH_MAX];
        if (moved_socket(path, moved, sizeof(moved))) {
            struct sockaddr_un there;
            memset(&there, 0, sizeof(there));
            there.sun_family = AF_UNIX;
            if (strlen(moved) >= sizeof(there.sun_path)) {
                errno = ENAMETOOLONG;
                return -1;
            }
            strcpy(there.sun_path, moved);
            trace("bind %s -> %s", path, moved);
            return libc_bind(sockfd, (const struct sockaddr *)&there, sizeof(there));
        }
    }
    return libc_bind(sockfd, addr, addrlen);
}

int unlink(const char *path)
{
    find_libc();
    char moved[PATH_MAX];
    if (moved_socket(path, moved, sizeof(moved))) return libc_unlink(moved);
    return libc_unlink(path);
}

int setrlimit(__rlimit_resource_t resource, const struct rlimit *rlim)
{
    find_libc();
    int r = libc_setrlimit(resource, rlim);
    if (r != 0 && errno == EPERM && resource == RLIMIT_NOFILE) {
        struct rlimit now, clamped = *rlim;
        if (getrlimit(RLIMIT_NOFILE, &now) != 0) return r;
        if (clamped.rlim_max > now.rlim_max) clamped.rlim_max = now.rlim_max;
        if (clamped.rlim_cur > clamped.rlim_max) clamped.rlim_cur = clamped.rlim_max;
        trace("setrlimit(NOFILE) beyond the hard limit: %lu instead", (unsigned long)clamped.rlim_max);
        r = libc_setrlimit(resource, &clamped);
    }
    return r;
}
