-- Number of spectra per bucket of {bucket_width} consecutive specObjIDs (bucket k holds ids
-- k*bucket_width .. (k+1)*bucket_width-1) within [min_specobjid, max_specobjid]. One cheap query on the clustered
-- index that lets the extraction split the id space into ranges of equal row counts (skyclass.extract).
SELECT CAST(s.specObjID / {bucket_width} AS BIGINT) AS bucket, COUNT(*) AS n
FROM SpecObj AS s
WHERE s.specObjID BETWEEN {min_specobjid} AND {max_specobjid}
GROUP BY CAST(s.specObjID / {bucket_width} AS BIGINT)
ORDER BY bucket
