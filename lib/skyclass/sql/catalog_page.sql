-- One keyset page of labelled objects: spectra with specObjID in (after_specobjid, range_end], in specObjID order.
-- The extraction continues from the last specObjID of a full page; a page of exactly the server's row cap may have
-- been truncated and is split instead (see skyclass.extract). specObjID is unsigned 64-bit: the literals are exact
-- integers, never floats. Every {placeholder} is filled with a validated literal (skyclass.skyserver.sql_*).
SELECT TOP {top}
    p.objID AS objID, s.specObjID AS specObjID, {photo_columns},
    s.class AS class, s.z AS redshift, s.zWarning AS zWarning
FROM SpecObj AS s
JOIN PhotoObj AS p ON s.bestObjID = p.objID
WHERE s.specObjID > {after_specobjid} AND s.specObjID <= {range_end}
ORDER BY s.specObjID
