/* A stand-in for libsgx_qe3_logic.so with the same C ABI, for tests on machines without SGX.
 * It keeps the contract the real library has with its caller (init before size, sizes checked,
 * invalid reports refused, qe_report_info filled) so DcapQlEngine's marshalling is exercised for real. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#define QUOTE_SIZE 1100u
static int initialized = 0;
static int policy_calls = 0;

uint32_t sgx_ql_set_enclave_load_policy(int policy) { policy_calls++; return policy == 0 ? 0 : 0xE002; }

static int ecdsa_key(const uint8_t *kid) {
    /* sgx_ql_att_key_id_t: algorithm_id (u32) at offset 154 must be 2 (ECDSA-P256). */
    uint32_t alg; memcpy(&alg, kid + 154, 4); return alg == 2;
}

uint32_t sgx_ql_init_quote(uint8_t *kid, uint8_t *target_info, bool refresh, size_t *pub_size, uint8_t *pub) {
    (void)refresh;
    if (!kid || !target_info || !pub_size) return 0xE002;
    if (!ecdsa_key(kid)) return 0xE00B;
    memset(target_info, 0, 512);
    memset(target_info, 0xAB, 32);          /* QE MRENCLAVE */
    target_info[32] = 0x15;                 /* attributes.flags INIT|MODE64BIT|PROVISION_KEY */
    if (pub) { if (*pub_size != 32) return 0xE002; for (int i = 0; i < 32; i++) pub[i] = (uint8_t)i; }
    *pub_size = 32;
    initialized = 1;
    return 0;
}

uint32_t sgx_ql_get_quote_size(uint8_t *kid, uint32_t *size) {
    if (!kid || !size) return 0xE002;
    if (!ecdsa_key(kid)) return 0xE00B;
    if (!initialized) return 0xE00F;
    *size = QUOTE_SIZE;
    return 0;
}

uint32_t sgx_ql_get_quote(const uint8_t *report, uint8_t *kid, uint8_t *qe_report_info, uint8_t *quote,
                          uint32_t quote_size) {
    static const uint8_t zero_mac[16];
    if (!report || !kid || !quote) return 0xE002;
    if (!initialized) return 0xE00F;
    if (quote_size < QUOTE_SIZE) return 0xE002;
    if (memcmp(report + 416, zero_mac, 16) == 0) return 0xE015;   /* "MAC mismatch" */
    memset(quote, 0, quote_size);
    quote[0] = 3; quote[2] = 2;                                   /* version 3, ECDSA-P256 */
    memcpy(quote + 48, report, 384);                              /* body = app report body */
    if (qe_report_info) memset(qe_report_info + 528, 0xCD, 432);  /* the QE's report for the app */
    return 0;
}
