"""common/paper.py: where the paper reports one model twice, the two tables agree (a typo shows here)."""
from common.paper import TABLE1, TABLE3, TABLE4, TABLE6


def test_the_paper_tables_agree_where_they_overlap():
    assert TABLE3[(64, 256)] == TABLE1[("LEAD", 64)] and TABLE3[(256, 256)] == TABLE1[("LEAD", 256)]
    for dim in (64, 128, 256):                        # LEAD is BYOL then LEAD's stage 2; Table 6 is on AFLW_M
        assert TABLE6[("byol", "lead")][dim] == TABLE4[("LEAD", dim)]["AFLW_M"]
