-- One keyset page of unlabelled photometric objects: primary detections (mode = 1) without a spectrum, in one ra
-- strip (ra_min inclusive; ra_max exclusive, inclusive for the box's last strip) of the dec band, with
-- objID > after_objid, in objID order. Every {placeholder} is filled with a validated literal
-- (skyclass.skyserver.sql_*).
SELECT TOP {top}
    p.objID AS objID, {photo_columns}
FROM PhotoObj AS p
WHERE p.mode = 1
  AND p.ra >= {ra_min} AND p.ra {ra_max_op} {ra_max}
  AND p.dec >= {dec_min} AND p.dec <= {dec_max}
  AND p.objID > {after_objid}
  AND NOT EXISTS (SELECT 1 FROM SpecObj AS s WHERE s.bestObjID = p.objID)
ORDER BY p.objID
