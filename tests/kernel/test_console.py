"""The console protocol's parser (no guest needed)."""

from prismtb.parsers import protocol_lines


def test_a_kernel_message_in_the_middle_of_a_check_line_is_taken_out():
    console = ("PRISM-CHECK rx_plain_udp_marked ok marked_by_port+200\r\n"
               "[   34.352390] device va left promiscuous mode\r\n"
               "PRISM-CHECK dmes[   34.354714] device vxlan0 left promiscuous mode\r\n"
               "g_clean ok \r\n"
               "[   34.355159] br0: port 1(vxlan0) entered disabled state\r\n"
               "PRISM-TEST-END\r\n")
    assert protocol_lines(console) == [
        "PRISM-CHECK rx_plain_udp_marked ok marked_by_port+200",
        "PRISM-CHECK dmesg_clean ok ",
        "PRISM-TEST-END",
    ]
