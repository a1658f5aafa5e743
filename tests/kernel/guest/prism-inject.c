// SPDX-License-Identifier: GPL-2.0
/*
 * prism-inject: sends IPv4/UDP frames, plain or VXLAN-encapsulated, through an AF_PACKET
 * socket. Frames sent this way skip ip_output(), so PRISM classifies them on receive (the
 * veth peer's netif_rx()), which is what the boot tests need to see marked_by_port rise.
 *
 *   prism-inject IFNAME DST_MAC SRC_IP DST_IP SPORT DPORT COUNT
 *                [vxlan VNI INNER_DST_MAC INNER_SRC_IP INNER_DST_IP INNER_SPORT INNER_DPORT]
 *
 * With "vxlan", the outer UDP packet goes to DPORT (normally 4789) and carries an Ethernet
 * frame with the inner IPv4/UDP packet. Exit status 0 when all COUNT frames were sent.
 *
 *   prism-inject --write-as nobody|nocap PATH VALUE
 *
 * Checks that a knob is root-only: writes VALUE to PATH as uid/gid 65534 ("nobody") or as
 * uid 0 without CAP_NET_ADMIN in the effective set ("nocap"). Prints the outcome; exit
 * status 0 when the write was refused with EACCES or EPERM, 1 when it went through.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <sys/syscall.h>
#include <sys/socket.h>
#include <unistd.h>

#define VXLAN_HLEN 8
#define PAYLOAD_LEN 32

static int parse_mac(const char *s, uint8_t mac[6])
{
	unsigned int b[6];
	int i;

	if (sscanf(s, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -1;
	for (i = 0; i < 6; i++) {
		if (b[i] > 0xff)
			return -1;
		mac[i] = (uint8_t)b[i];
	}
	return 0;
}

static int parse_port(const char *s, uint16_t *port)
{
	char *end;
	long v = strtol(s, &end, 10);

	if (*s == '\0' || *end != '\0' || v < 1 || v > 65535)
		return -1;
	*port = (uint16_t)v;
	return 0;
}

static uint16_t ip_checksum(const void *data, size_t len)
{
	const uint8_t *p = data;
	uint32_t sum = 0;
	size_t i;

	for (i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)(p[i] << 8 | p[i + 1]);
	if (len & 1)
		sum += (uint32_t)(p[len - 1] << 8);
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return htons((uint16_t)~sum);
}

/* Writes Ethernet + IPv4 + UDP headers at buf for a UDP payload of payload_len bytes;
 * returns the header length.
 */
static size_t put_headers(uint8_t *buf, const uint8_t dst_mac[6], const uint8_t src_mac[6],
			  struct in_addr src, struct in_addr dst, uint16_t sport, uint16_t dport,
			  size_t payload_len)
{
	struct ether_header *eth = (struct ether_header *)buf;
	struct iphdr *ip = (struct iphdr *)(buf + sizeof(*eth));
	struct udphdr *udp = (struct udphdr *)(buf + sizeof(*eth) + sizeof(*ip));

	memcpy(eth->ether_dhost, dst_mac, 6);
	memcpy(eth->ether_shost, src_mac, 6);
	eth->ether_type = htons(ETHERTYPE_IP);

	memset(ip, 0, sizeof(*ip));
	ip->version = 4;
	ip->ihl = 5;
	ip->ttl = 64;
	ip->protocol = IPPROTO_UDP;
	ip->tot_len = htons((uint16_t)(sizeof(*ip) + sizeof(*udp) + payload_len));
	ip->saddr = src.s_addr;
	ip->daddr = dst.s_addr;
	ip->check = ip_checksum(ip, sizeof(*ip));

	udp->source = htons(sport);
	udp->dest = htons(dport);
	udp->len = htons((uint16_t)(sizeof(*udp) + payload_len));
	udp->check = 0; /* optional for IPv4 */
	return sizeof(*eth) + sizeof(*ip) + sizeof(*udp);
}

static int write_as(const char *who, const char *path, const char *value)
{
	int fd, err;
	ssize_t n;

	if (!strcmp(who, "nobody")) {
		if (setgroups(0, NULL) || setgid(65534) || setuid(65534)) {
			perror("prism-inject: dropping to nobody");
			return 2;
		}
	} else if (!strcmp(who, "nocap")) {
		struct __user_cap_header_struct hdr = { _LINUX_CAPABILITY_VERSION_3, 0 };
		struct __user_cap_data_struct data[2];

		if (syscall(SYS_capget, &hdr, data)) {
			perror("prism-inject: capget");
			return 2;
		}
		data[0].effective &= ~(1u << CAP_NET_ADMIN);
		if (syscall(SYS_capset, &hdr, data)) {
			perror("prism-inject: capset");
			return 2;
		}
	} else {
		return 2;
	}

	fd = open(path, O_WRONLY);
	if (fd < 0) {
		err = errno;
		printf("open errno=%d (%s)\n", err, strerror(err));
		return err == EACCES || err == EPERM ? 0 : 1;
	}
	n = write(fd, value, strlen(value));
	err = errno;
	close(fd);
	if (n >= 0) {
		printf("write accepted\n");
		return 1;
	}
	printf("write errno=%d (%s)\n", err, strerror(err));
	return err == EACCES || err == EPERM ? 0 : 1;
}

static void usage(void)
{
	fprintf(stderr, "usage: prism-inject IFNAME DST_MAC SRC_IP DST_IP SPORT DPORT COUNT\n"
			"       [vxlan VNI INNER_DST_MAC INNER_SRC_IP INNER_DST_IP INNER_SPORT INNER_DPORT]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	uint8_t frame[256], dst_mac[6], inner_dst_mac[6];
	const uint8_t src_mac[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x01 };
	const uint8_t inner_src_mac[6] = { 0x02, 0x00, 0x00, 0x00, 0x00, 0x02 };
	struct in_addr src, dst, inner_src, inner_dst;
	uint16_t sport, dport, inner_sport = 0, inner_dport = 0;
	struct sockaddr_ll sll;
	unsigned long vni = 0;
	long count, i;
	int vxlan, fd;
	size_t len;
	char *end;

	if (argc == 5 && !strcmp(argv[1], "--write-as"))
		return write_as(argv[2], argv[3], argv[4]);
	if (argc != 8 && argc != 15)
		usage();
	vxlan = argc == 15;
	if (parse_mac(argv[2], dst_mac) || !inet_aton(argv[3], &src) || !inet_aton(argv[4], &dst) ||
	    parse_port(argv[5], &sport) || parse_port(argv[6], &dport))
		usage();
	count = strtol(argv[7], &end, 10);
	if (*end != '\0' || count < 1 || count > 1000000)
		usage();
	if (vxlan) {
		if (strcmp(argv[8], "vxlan"))
			usage();
		vni = strtoul(argv[9], &end, 10);
		if (*end != '\0' || vni > 0xffffff || parse_mac(argv[10], inner_dst_mac) ||
		    !inet_aton(argv[11], &inner_src) || !inet_aton(argv[12], &inner_dst) ||
		    parse_port(argv[13], &inner_sport) || parse_port(argv[14], &inner_dport))
			usage();
	}

	memset(frame, 0, sizeof(frame));
	if (vxlan) {
		size_t inner_len = sizeof(struct ether_header) + sizeof(struct iphdr) +
				   sizeof(struct udphdr) + PAYLOAD_LEN;
		size_t outer = put_headers(frame, dst_mac, src_mac, src, dst, sport, dport,
					   VXLAN_HLEN + inner_len);
		uint8_t *vx = frame + outer;

		vx[0] = 0x08; /* I flag: VNI valid */
		vx[4] = (uint8_t)(vni >> 16);
		vx[5] = (uint8_t)(vni >> 8);
		vx[6] = (uint8_t)vni;
		len = outer + VXLAN_HLEN;
		len += put_headers(frame + len, inner_dst_mac, inner_src_mac, inner_src, inner_dst,
				   inner_sport, inner_dport, PAYLOAD_LEN);
	} else {
		len = put_headers(frame, dst_mac, src_mac, src, dst, sport, dport, PAYLOAD_LEN);
	}
	memset(frame + len, 'p', PAYLOAD_LEN);
	len += PAYLOAD_LEN;

	fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	if (fd < 0) {
		perror("prism-inject: socket");
		return 1;
	}
	memset(&sll, 0, sizeof(sll));
	sll.sll_family = AF_PACKET;
	sll.sll_ifindex = (int)if_nametoindex(argv[1]);
	sll.sll_halen = 6;
	memcpy(sll.sll_addr, dst_mac, 6);
	if (!sll.sll_ifindex) {
		fprintf(stderr, "prism-inject: no interface %s\n", argv[1]);
		return 1;
	}
	for (i = 0; i < count; i++) {
		if (sendto(fd, frame, len, 0, (struct sockaddr *)&sll, sizeof(sll)) != (ssize_t)len) {
			if (errno == ENOBUFS) {
				usleep(1000);
				i--;
				continue;
			}
			perror("prism-inject: sendto");
			return 1;
		}
	}
	close(fd);
	return 0;
}
